//! The gateway's own rate limiter: keyed GCRA per policy with nginx
//! `limit_req` semantics (see [`gcra`]), capped memory (see [`store`]), and
//! answers that say what happened: the reject status, a problem body,
//! `Retry-After` rounded up, and the IETF `RateLimit-Policy` / `RateLimit`
//! fields (draft-ietf-httpapi-ratelimit-headers).
//!
//! Why not `tower_governor`: its `per_second(n)` is an interval, its
//! `Retry-After` truncates, its smart key extractor trusts the leftmost
//! `X-Forwarded-For`, and governor's keyed store has no cap and no delay
//! mode; the algorithm is the same GCRA, implemented here in a few lines.

pub mod cluster;
pub mod gcra;
pub mod store;

pub use gcra::{Clock, FakeClock, Gcra, MonotonicClock, Verdict};
pub use store::{Key, KeyedStore};

use crate::client_ip::KeyPrefixes;
use crate::config::{PolicySettings, RateLimitSettings};
use http::{HeaderMap, HeaderValue, Method};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// One named policy and its state.
#[derive(Debug)]
pub struct Policy {
    /// Its name in the configuration.
    pub name: Arc<str>,
    /// Its definition; state is reused across reloads only when equal.
    pub settings: PolicySettings,
    /// GCRA parameters.
    pub gcra: Gcra,
    /// Per-key state.
    pub store: KeyedStore,
    /// Whether the state is shared with the other gateway nodes.
    pub shared: bool,
    /// The share of the quota this node applies on its own: 1 while the
    /// state is shared (or not shared at all), the live nodes when the
    /// shared store is out of reach (set by `cluster::run`).
    divisor: AtomicU32,
    policy_field: HeaderValue,
}

impl Policy {
    fn new(name: &str, settings: PolicySettings, max_keys: usize, shared: bool) -> Self {
        let gcra = Gcra::new(settings.rate.per_second(), settings.burst);
        let field = format!("\"{name}\";q={};w={}", settings.rate.count, settings.rate.window_secs());
        Self {
            name: Arc::from(name),
            gcra,
            store: KeyedStore::new(max_keys, shared),
            shared,
            divisor: AtomicU32::new(1),
            policy_field: HeaderValue::from_str(&field).unwrap_or_else(|_| HeaderValue::from_static("\"policy\"")),
            settings,
        }
    }

    /// Applies `1/divisor` of the quota from now on (at least 1).
    pub fn set_divisor(&self, divisor: u32) {
        self.divisor.store(divisor.max(1), Ordering::Relaxed);
    }

    /// The share of the quota in force (1: all of it).
    pub fn divisor(&self) -> u32 {
        self.divisor.load(Ordering::Relaxed)
    }

    /// The GCRA parameters in force: the policy's, or with the rate divided
    /// by the divisor (the burst then divides with it: the tolerance, a
    /// time, stays the same while each request costs `divisor` times more).
    fn gcra_now(&self) -> Gcra {
        match self.divisor() {
            0 | 1 => self.gcra,
            d => Gcra {
                interval: self.gcra.interval.saturating_mul(u64::from(d)),
                tolerance: self.gcra.tolerance,
            },
        }
    }
}

/// What the limiter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Within the rate.
    Passed,
    /// Within the burst, held to leave at the rate.
    Delayed,
    /// Over the burst: refused.
    Rejected,
    /// Dry run: would have been delayed; passed at once.
    DryRunDelayed,
    /// Dry run: would have been refused; passed.
    DryRunRejected,
}

impl Outcome {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Delayed => "delayed",
            Self::Rejected => "rejected",
            Self::DryRunDelayed => "dry_run_delayed",
            Self::DryRunRejected => "dry_run_rejected",
        }
    }
}

/// A decision: which policy, what outcome, how long to hold the request,
/// and the header values to send.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The policy that decided.
    pub policy: Arc<Policy>,
    /// What happened.
    pub outcome: Outcome,
    /// How long to hold the request before passing it on.
    pub delay: Duration,
    /// The GCRA verdict behind it.
    pub verdict: Verdict,
}

const SECOND: u64 = 1_000_000_000;

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(SECOND)
}

impl Decision {
    /// Whole seconds until a retry can succeed, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        match self.verdict {
            Verdict::Deny { retry_after } => ceil_secs(retry_after).max(1),
            Verdict::Allow { .. } => 0,
        }
    }

    /// Adds `RateLimit-Policy` and `RateLimit` (and `Retry-After` on a refusal).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-policy", self.policy.policy_field.clone());
        let (remaining, reset) = match self.verdict {
            Verdict::Allow { remaining, reset, .. } => (remaining, ceil_secs(reset)),
            Verdict::Deny { retry_after } => (0, ceil_secs(retry_after).max(1)),
        };
        let field = format!("\"{}\";r={remaining};t={reset}", self.policy.name);
        if let Ok(v) = HeaderValue::from_str(&field) {
            headers.insert("ratelimit", v);
        }
        if self.outcome == Outcome::Rejected {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        }
    }
}

#[derive(Debug)]
struct Rule {
    prefix: String,
    methods: Vec<Method>,
    policy: Arc<Policy>,
}

/// All policies, the rules that pick them, and the allowlist.
#[derive(Debug)]
pub struct RateLimiter {
    rules: Vec<Rule>,
    policies: BTreeMap<String, Arc<Policy>>,
    allowlist: Vec<IpNet>,
    prefixes: KeyPrefixes,
    /// Whether successes carry the RateLimit fields.
    pub headers: bool,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    /// Builds the limiter. A policy whose definition equals one in
    /// `previous` keeps that policy's state, so a reload never hands
    /// clients fresh bursts.
    pub fn new(
        policies: &BTreeMap<String, PolicySettings>,
        settings: &RateLimitSettings,
        prefixes: KeyPrefixes,
        clock: Arc<dyn Clock>,
        previous: Option<&RateLimiter>,
    ) -> Self {
        let policies: BTreeMap<String, Arc<Policy>> = policies
            .iter()
            .map(|(name, s)| {
                let shared = s.shared.unwrap_or(settings.shared.is_some());
                let kept = previous
                    .and_then(|p| p.policies.get(name))
                    .filter(|p| p.settings == *s && p.shared == shared && p.store_cap_matches(settings.max_keys))
                    .cloned();
                let policy = kept.unwrap_or_else(|| Arc::new(Policy::new(name, s.clone(), settings.max_keys, shared)));
                (name.clone(), policy)
            })
            .collect();
        let mut rules: Vec<Rule> = settings
            .rules
            .iter()
            .filter_map(|r| {
                let policy = policies.get(&r.policy)?.clone();
                let methods = r
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect();
                Some(Rule {
                    prefix: r.path_prefix.clone(),
                    methods,
                    policy,
                })
            })
            .collect();
        if settings.rules.is_empty() && policies.len() == 1 {
            let only = policies.values().next().cloned();
            rules.extend(only.map(|policy| Rule {
                prefix: "/".into(),
                methods: Vec::new(),
                policy,
            }));
        }
        // Longest prefix first; among equal prefixes, method-specific first.
        rules.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.methods.is_empty()));
        Self {
            rules,
            policies,
            allowlist: settings.allowlist.clone(),
            prefixes,
            headers: settings.headers,
            clock,
        }
    }

    /// The policies, by name.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// The policies whose state is shared with the other nodes.
    pub fn shared_policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values().filter(|p| p.shared)
    }

    /// The clock decisions are made on (a sync converts the shared
    /// store's times to it).
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The client key of `ip` (its address masked to the configured prefix).
    pub fn key(&self, ip: IpAddr) -> Key {
        self.prefixes.key(ip)
    }

    /// Decides a request from `ip`; `None` when no rule applies or the
    /// client is allowlisted.
    pub fn check(&self, ip: IpAddr, method: &Method, path: &str) -> Option<Decision> {
        let ip = crate::client_ip::canonical(ip);
        if self.allowlist.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        let rule = self
            .rules
            .iter()
            .find(|r| path.starts_with(&r.prefix) && (r.methods.is_empty() || r.methods.contains(method)))?;
        let policy = rule.policy.clone();
        let verdict = policy
            .store
            .decide(&policy.gcra_now(), self.prefixes.key(ip), self.clock.now());
        let (outcome, delay) = match (verdict, policy.settings.nodelay, policy.settings.dry_run) {
            (Verdict::Deny { .. }, _, false) => (Outcome::Rejected, 0),
            (Verdict::Deny { .. }, _, true) => (Outcome::DryRunRejected, 0),
            (Verdict::Allow { backlog, .. }, false, false) if backlog > 0 => (Outcome::Delayed, backlog),
            (Verdict::Allow { backlog, .. }, false, true) if backlog > 0 => (Outcome::DryRunDelayed, 0),
            (Verdict::Allow { .. }, _, _) => (Outcome::Passed, 0),
        };
        Some(Decision {
            policy,
            outcome,
            delay: Duration::from_nanos(delay),
            verdict,
        })
    }

    /// Drops replenished keys in every policy; returns `(policy, keys left)`.
    pub fn cleanup(&self) -> Vec<(Arc<str>, usize)> {
        let now = self.clock.now();
        self.policies
            .values()
            .map(|p| (p.name.clone(), p.store.cleanup(now)))
            .collect()
    }
}

impl Policy {
    fn store_cap_matches(&self, max_keys: usize) -> bool {
        self.store.capacity_for(max_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Rate, RateUnit, RuleSettings};

    fn policy(rate: u32, burst: u32, nodelay: bool, dry_run: bool) -> PolicySettings {
        PolicySettings {
            rate: Rate {
                count: rate,
                per: RateUnit::Second,
            },
            burst,
            nodelay,
            status: 429,
            dry_run,
            shared: None,
        }
    }

    fn limiter(policies: &[(&str, PolicySettings)], rules: Vec<RuleSettings>, clock: Arc<FakeClock>) -> RateLimiter {
        let map = policies.iter().map(|(n, p)| (n.to_string(), p.clone())).collect();
        let settings = RateLimitSettings {
            rules,
            allowlist: vec!["10.9.0.0/16".parse().expect("net")],
            ..RateLimitSettings::default()
        };
        RateLimiter::new(&map, &settings, KeyPrefixes::default(), clock, None)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_policy_without_rules_limits_everything_and_the_allowlist_bypasses() {
        let clock = Arc::new(FakeClock::default());
        let rl = limiter(&[("p", policy(1, 0, true, false))], vec![], clock);
        assert_eq!(
            rl.check(ip("192.0.2.1"), &Method::GET, "/x").map(|d| d.outcome),
            Some(Outcome::Passed)
        );
        assert_eq!(
            rl.check(ip("192.0.2.1"), &Method::GET, "/y").map(|d| d.outcome),
            Some(Outcome::Rejected)
        );
        for _ in 0..5 {
            assert!(rl.check(ip("10.9.1.1"), &Method::GET, "/x").is_none());
        }
    }

    #[test]
    fn rules_pick_policies_by_longest_prefix_and_method() {
        let clock = Arc::new(FakeClock::default());
        let rules = vec![
            RuleSettings {
                path_prefix: "/".into(),
                methods: vec![],
                policy: "reads".into(),
            },
            RuleSettings {
                path_prefix: "/configs".into(),
                methods: vec!["POST".into()],
                policy: "writes".into(),
            },
        ];
        let rl = limiter(
            &[
                ("reads", policy(100, 0, true, false)),
                ("writes", policy(1, 0, true, false)),
            ],
            rules,
            clock,
        );
        let name = |d: Option<Decision>| d.map(|d| d.policy.name.to_string());
        assert_eq!(
            name(rl.check(ip("192.0.2.1"), &Method::POST, "/configs")),
            Some("writes".into())
        );
        assert_eq!(
            name(rl.check(ip("192.0.2.1"), &Method::GET, "/configs")),
            Some("reads".into())
        );
    }

    #[test]
    fn delay_mode_holds_requests_within_the_burst_and_refuses_beyond() {
        let clock = Arc::new(FakeClock::default());
        let rl = limiter(&[("p", policy(10, 2, false, false))], vec![], clock);
        let d: Vec<(Outcome, u128)> = (0..4)
            .map(|_| {
                rl.check(ip("192.0.2.1"), &Method::GET, "/")
                    .map(|d| (d.outcome, d.delay.as_millis()))
                    .expect("rule")
            })
            .collect();
        assert_eq!(
            d,
            [
                (Outcome::Passed, 0),
                (Outcome::Delayed, 100),
                (Outcome::Delayed, 200),
                (Outcome::Rejected, 0)
            ]
        );
    }

    #[test]
    fn dry_run_counts_but_never_holds_or_refuses() {
        let clock = Arc::new(FakeClock::default());
        let rl = limiter(&[("p", policy(10, 1, false, true))], vec![], clock);
        let outcomes: Vec<Outcome> = (0..3)
            .filter_map(|_| rl.check(ip("192.0.2.1"), &Method::GET, "/"))
            .map(|d| d.outcome)
            .collect();
        assert_eq!(
            outcomes,
            [Outcome::Passed, Outcome::DryRunDelayed, Outcome::DryRunRejected]
        );
    }

    #[test]
    fn headers_and_retry_after_round_up() {
        let clock = Arc::new(FakeClock::default());
        let mut p = policy(1, 0, true, false);
        p.rate = Rate {
            count: 30,
            per: RateUnit::Minute,
        };
        let rl = limiter(&[("per_ip", p)], vec![], clock.clone());
        let first = rl.check(ip("192.0.2.1"), &Method::GET, "/").expect("rule");
        let mut h = HeaderMap::new();
        first.write_headers(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"per_ip\";q=30;w=60");
        assert_eq!(h["ratelimit"], "\"per_ip\";r=0;t=2");
        clock.advance(Duration::from_millis(500));
        let refused = rl.check(ip("192.0.2.1"), &Method::GET, "/").expect("rule");
        assert_eq!(refused.outcome, Outcome::Rejected);
        assert_eq!(refused.retry_after_secs(), 2, "1.5 s rounds up to 2");
        let mut h = HeaderMap::new();
        refused.write_headers(&mut h);
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["ratelimit"], "\"per_ip\";r=0;t=2");
    }

    #[test]
    fn replenishment_follows_the_fake_clock() {
        let clock = Arc::new(FakeClock::default());
        let rl = limiter(&[("p", policy(20, 0, true, false))], vec![], clock.clone());
        let client = ip("192.0.2.1");
        assert_eq!(
            rl.check(client, &Method::GET, "/").map(|d| d.outcome),
            Some(Outcome::Passed)
        );
        clock.advance(Duration::from_millis(10));
        assert_eq!(
            rl.check(client, &Method::GET, "/").map(|d| d.outcome),
            Some(Outcome::Rejected)
        );
        clock.advance(Duration::from_millis(40));
        assert_eq!(
            rl.check(client, &Method::GET, "/").map(|d| d.outcome),
            Some(Outcome::Passed)
        );
    }

    fn rules_a_and_b() -> Vec<RuleSettings> {
        ["a", "b"]
            .map(|p| RuleSettings {
                path_prefix: format!("/{p}"),
                methods: vec![],
                policy: p.into(),
            })
            .into()
    }

    #[test]
    fn unchanged_policies_keep_their_state_across_a_rebuild() {
        let clock = Arc::new(FakeClock::default());
        let old = limiter(
            &[("a", policy(1, 0, true, false)), ("b", policy(1, 0, true, false))],
            rules_a_and_b(),
            clock.clone(),
        );
        let client = ip("192.0.2.1");
        old.check(client, &Method::GET, "/a");
        old.check(client, &Method::GET, "/b");
        let map = [
            ("a".to_string(), policy(1, 0, true, false)),
            ("b".to_string(), policy(2, 0, true, false)),
        ]
        .into_iter()
        .collect();
        let settings = RateLimitSettings {
            rules: rules_a_and_b(),
            ..RateLimitSettings::default()
        };
        let new = RateLimiter::new(&map, &settings, KeyPrefixes::default(), clock, Some(&old));
        assert_eq!(
            new.check(client, &Method::GET, "/a").map(|d| d.outcome),
            Some(Outcome::Rejected),
            "a kept its state"
        );
        assert_eq!(
            new.check(client, &Method::GET, "/b").map(|d| d.outcome),
            Some(Outcome::Passed),
            "b changed: fresh"
        );
    }

    #[test]
    fn a_divisor_admits_that_share_of_the_rate_and_the_same_tolerance() {
        let clock = Arc::new(FakeClock::default());
        let rl = limiter(&[("p", policy(20, 10, true, false))], vec![], clock.clone());
        let p = rl.policies().next().expect("policy").clone();
        p.set_divisor(3);
        assert_eq!(p.divisor(), 3);
        let client = ip("192.0.2.1");
        let passed = |n: usize| {
            (0..n)
                .filter(|_| rl.check(client, &Method::GET, "/").map(|d| d.outcome) == Some(Outcome::Passed))
                .count()
        };
        // Tolerance 500 ms at 150 ms a request: 4 at once, not 11.
        assert_eq!(passed(20), 4);
        clock.advance(Duration::from_secs(3));
        // 3 s at 20/3 r/s: 20 more (and the burst back).
        assert_eq!(passed(100), 4);
        clock.advance(Duration::from_millis(150));
        assert_eq!(passed(10), 1);
        p.set_divisor(0);
        assert_eq!(p.divisor(), 1, "never more than the whole quota");
    }

    #[test]
    fn only_shared_policies_keep_sync_bookkeeping() {
        let clock = Arc::new(FakeClock::default());
        let mut local = policy(10, 0, true, false);
        local.shared = Some(false);
        let map = [("a".to_string(), policy(10, 0, true, false)), ("b".to_string(), local)]
            .into_iter()
            .collect();
        let settings = RateLimitSettings {
            rules: rules_a_and_b(),
            shared: Some(crate::config::SharedSettings::default()),
            ..RateLimitSettings::default()
        };
        let rl = RateLimiter::new(&map, &settings, KeyPrefixes::default(), clock, None);
        let shared: Vec<&str> = rl.shared_policies().map(|p| &*p.name).collect();
        assert_eq!(shared, ["a"], "unset follows the section; false opts out");
        let client = ip("192.0.2.1");
        rl.check(client, &Method::GET, "/a");
        rl.check(client, &Method::GET, "/b");
        let taken = |name: &str| {
            rl.policies()
                .find(|p| &*p.name == name)
                .map(|p| p.store.take_active().len())
        };
        assert_eq!(taken("a"), Some(1));
        assert_eq!(taken("b"), Some(0));
    }
}
