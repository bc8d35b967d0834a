//! One limit across every gateway node: the shared policies' state kept
//! in step through Redis, with nothing added to a request's latency.
//!
//! Contract:
//! - **The local limiter decides.** A request is judged on this node's
//!   state at once; Redis is never on a request's path.
//! - **Sync.** Every `sync_interval`, [`run`] takes from each shared
//!   policy the keys seen since the last sync with the requests admitted
//!   for each (`KeyedStore::take_active`), and sends them to Redis in one
//!   script call per [`CHUNK`] keys. Redis holds one TAT per key, in its own
//!   clock (`TIME`), so node clocks never need to agree: the script moves
//!   the key's TAT on by every node's admitted requests (counted from the
//!   start of the sync window, not from now, so a client spread evenly
//!   under its rate is not charged a window's worth of backlog) and
//!   answers how far the TAT is ahead of now. Each node then moves its own
//!   state on to that (`KeyedStore::fold`), read against the time the call
//!   left. Keys expire in Redis `node_ttl` after they are replenished.
//!   Redis work therefore grows with the keys active in an interval, never
//!   with requests: one call a sync (per chunk), whatever the traffic, and
//!   at most `max_sync_keys` keys, those nearest their limit first.
//! - **Accuracy.** Between syncs each node admits on what it knows, so the
//!   cluster can admit more than the quota for up to one interval; that
//!   excess is charged to the key's shared TAT at the next sync (a debt,
//!   paid back by refusing until it is), so over any longer span a client
//!   gets the policy's rate plus burst, as on one node (README: the
//!   measured figures).
//! - **Membership.** Each sync is also a heartbeat: a sorted set of node
//!   ids scored by Redis time; a node not heard from for `node_ttl` drops
//!   out. The count is the `gateway_rate_limit_live_nodes` gauge.
//! - **Degraded mode.** A sync that fails or takes longer than
//!   `sync_timeout` puts the node on its own: each shared policy then
//!   admits `1/N` of its rate, N the last known live nodes (or
//!   `assumed_nodes` before Redis ever answered), never a 5xx and never
//!   unlimited. It is logged once and shown by
//!   `gateway_rate_limit_shared_degraded`; meanwhile the node sends only
//!   heartbeats, and after [`RECOVERY_PROBES`] in time in a row it shares
//!   again, its first sync raising the shared TATs to its own. What a
//!   failed sync carried is dropped, not resent (and Redis applies nothing
//!   from a call it runs past the node's deadline): it was admitted under
//!   this node's own view, and counting it later would charge it twice.
//! - **Reload and restart.** The Redis client and the node's identity
//!   ([`Link`]) outlive a reload whose `[rate_limit.shared]` is unchanged;
//!   an unchanged policy keeps its local state (`RateLimiter::new`) and a
//!   restarted node, or a changed policy, starts empty locally but takes
//!   in each key's shared state at its first sync, and meanwhile pays for
//!   what it admits through the shared TAT: it does not hand out fresh
//!   bursts. The shared state is in time, not in counts, so a changed
//!   quota applies to it at once.

use super::store::Key;
use super::{Policy, RateLimiter};
use crate::config::SharedSettings;
use crate::ip_text::IpText;
use crate::metrics::Metrics;
use fred::clients::Client;
use fred::prelude::{Builder, ClientLike, Error, ReconnectPolicy};
use fred::types::config::{Config as RedisConfig, Options, UnresponsiveConfig};
use fred::types::{ClusterHash, CustomCommand};
use shared::shutdown::CancellationToken;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Keys per script call: a call holds Redis for well under a millisecond.
pub const CHUNK: usize = 500;

/// The sync script. KEYS: the membership set, then one key per client
/// key. ARGV: this node's id, the node TTL (µs), the sync window (µs), the
/// time in Redis's clock after which the node will have given up on this
/// call (µs; 0: none), then per client key its policy's emission interval
/// (µs), the requests this node admitted, and how far ahead of now this
/// node's own TAT is (µs; -1: not sent). Answers the live node count,
/// Redis's time (µs), 1 if the call ran past its deadline (0 if not), then
/// per client key how far its TAT is ahead of now (µs, 0 when replenished).
///
/// A call run after its deadline (Redis stalled, the node gave up) applies
/// no counts: the node dropped them, and charging them late, all at once,
/// would refuse clients that kept to their rate.
///
/// A node sends its own TATs only on its first sync after limiting alone:
/// the shared TAT is then raised to at least each, so what the nodes
/// admitted meanwhile carries over instead of the shared state starting
/// over from empty. (Sent at every sync they would ratchet the shared TAT
/// forward by a round trip each time.)
///
/// A key is kept for the node TTL past its TAT, not dropped at its TAT: a
/// sync dates its admissions from the start of its window, up to a window
/// back, and a key gone at its TAT would restart from there, forgetting
/// what was charged in between (which once let two nodes admit twice the
/// rate for as long as the client kept exactly to it).
const SYNC: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000))
local since = now - tonumber(ARGV[3])
local deadline = tonumber(ARGV[4])
local late = deadline > 0 and now > deadline
local out = { redis.call('ZCARD', KEYS[1]), now, late and 1 or 0 }
local stored = #KEYS > 1 and redis.call('MGET', unpack(KEYS, 2)) or {}
for i = 2, #KEYS do
  local count = tonumber(ARGV[3 * i])
  local own_ahead = tonumber(ARGV[3 * i + 1])
  local own = own_ahead >= 0 and now + own_ahead or 0
  local tat = tonumber(stored[i - 1]) or 0
  if not late and (count > 0 or own > tat) then
    if count > 0 then
      tat = math.max(tat, since) + tonumber(ARGV[3 * i - 1]) * count
    end
    if own > tat then tat = own end
    local keep = math.max(tat - now, 0) + ttl
    redis.call('SET', KEYS[i], tat, 'PX', math.floor(keep / 1000) + 1)
  end
  out[i + 2] = math.max(tat - now, 0)
end
return out
";

/// Answer fields before the per-key ones: live nodes, Redis's time, late.
const HEAD: usize = 3;

/// Removes this node from the membership set (a deliberate stop).
const LEAVE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

/// Heartbeats in time, in a row, that end degraded mode: one answer from a
/// Redis hovering at its budget does not flip the node back and forth.
const RECOVERY_PROBES: u32 = 3;

/// The connection to the shared store and this node's place in it; kept
/// across reloads while `[rate_limit.shared]` is unchanged. Dropped (a
/// reload that changes or removes the section), it leaves the membership
/// and closes its connection in the background.
pub struct Link {
    client: Client,
    options: Options,
    settings: SharedSettings,
    url: String,
    node: String,
    /// Live nodes at the last successful sync (0: never synced).
    live: AtomicU32,
    /// This node's clock: the origin of `offset`.
    origin: Instant,
    /// Redis's time minus this node's at sending (µs), from the last answer
    /// (`i64::MIN`: not known yet).
    offset: AtomicI64,
    degraded: AtomicBool,
    /// Heartbeats answered in time since the node went on its own.
    probes_ok: AtomicU32,
    /// The next full sync sends the node's own TATs (after limiting alone).
    carry_own: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.node)
            .field("prefix", &self.settings.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Builds the client and starts connecting in the background (a Redis
    /// that is down only means degraded mode until it is up). `previous`,
    /// the link this one replaces, hands over the live node count, so a
    /// reload during an outage still divides by it.
    pub fn connect(settings: &SharedSettings, previous: Option<&Link>) -> anyhow::Result<Arc<Self>> {
        let url = settings.resolve_url().map_err(anyhow::Error::msg)?;
        let mut config = RedisConfig::from_url(&url)?;
        config.fail_fast = false;
        let budget = settings.sync_timeout.max(Duration::from_millis(100));
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = budget.max(Duration::from_secs(1));
                c.internal_command_timeout = budget.max(Duration::from_secs(1));
                c.max_command_attempts = 1;
                // A connection whose peer vanished without a reset (a Redis
                // task gone with its node) is replaced within seconds, not
                // when the kernel gives up on it.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(2).max(budget * 2)),
                    interval: Duration::from_millis(500),
                };
            })
            .with_performance_config(|p| p.default_command_timeout = budget)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2))
            .build()?;
        client.connect();
        Ok(Arc::new(Self {
            client,
            options: Options {
                fail_fast: true,
                timeout: Some(budget),
                max_attempts: Some(1),
                ..Options::default()
            },
            settings: settings.clone(),
            url,
            node: uuid::Uuid::new_v4().to_string(),
            live: AtomicU32::new(previous.map_or(0, Link::live_nodes)),
            origin: Instant::now(),
            offset: AtomicI64::new(i64::MIN),
            degraded: AtomicBool::new(false),
            probes_ok: AtomicU32::new(0),
            carry_own: AtomicBool::new(false),
        }))
    }

    /// Whether this link serves `settings` as they read now (same
    /// settings, same resolved URL).
    pub fn serves(&self, settings: &SharedSettings) -> bool {
        self.settings == *settings && settings.resolve_url().is_ok_and(|u| u == self.url)
    }

    /// Live nodes as of the last successful sync (0: none yet).
    pub fn live_nodes(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// This node's clock (µs since the link was made).
    fn local_micros(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// The Redis time by which a call sent now is given up on (0 while
    /// Redis's clock is not known).
    fn deadline(&self) -> i64 {
        match self.offset.load(Ordering::Relaxed) {
            i64::MIN => 0,
            offset => {
                let budget = i64::try_from(self.settings.sync_timeout.as_micros()).unwrap_or(i64::MAX);
                self.local_micros().saturating_add(offset).saturating_add(budget)
            }
        }
    }

    fn members_key(&self) -> String {
        format!("{}:nodes", self.settings.key_prefix)
    }

    async fn eval(&self, script: &'static str, keys: Vec<String>, args: Vec<String>) -> Result<Vec<i64>, Error> {
        eval(&self.client, &self.options, script, keys, args).await
    }

    /// Leaves the membership set and closes the connection (at shutdown,
    /// once this link's syncs have stopped, so the other nodes count one
    /// fewer at once rather than after `node_ttl`).
    pub async fn leave(&self) {
        leave(&self.client, &self.options, self.members_key(), self.node.clone()).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let (client, options) = (self.client.clone(), self.options.clone());
        let (members, node) = (self.members_key(), self.node.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { leave(&client, &options, members, node).await });
        }
    }
}

async fn eval(
    client: &Client,
    options: &Options,
    script: &'static str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Vec<i64>, Error> {
    let eval = CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false);
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script.to_string());
    all.push(keys.len().to_string());
    all.extend(keys);
    all.extend(args);
    client.with_options(options).custom(eval, all).await
}

async fn leave(client: &Client, options: &Options, members: String, node: String) {
    if client.is_connected() {
        let _ = eval(client, options, LEAVE, vec![members], vec![node]).await;
    }
    let _ = client.quit().await;
}

/// Syncs `limiter`'s shared policies every `sync_interval` until `stop`.
pub async fn run(link: Arc<Link>, limiter: Arc<RateLimiter>, metrics: Arc<Metrics>, stop: CancellationToken) {
    // The gauges follow this link (a reload may have replaced another).
    metrics
        .rate_limit_degraded
        .set(i64::from(link.degraded.load(Ordering::Relaxed)));
    metrics.rate_limit_live_nodes.set(i64::from(link.live_nodes()));
    let mut tick = tokio::time::interval(link.settings.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A new node's first sync waits for the first connection (within the
    // budget), so starting beside a healthy Redis is not an outage.
    let _ = tokio::time::timeout(link.settings.sync_timeout, link.client.wait_for_connect()).await;
    let mut window_start = Instant::now() - link.settings.sync_interval;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let window = window_start.elapsed();
        window_start = Instant::now();
        let policies: Vec<&Arc<Policy>> = limiter.shared_policies().collect();
        if link.degraded.load(Ordering::Relaxed) {
            probe(&link, &policies, &metrics, window).await;
        } else {
            sync(&link, &limiter, &policies, &metrics, window).await;
        }
    }
}

/// What one sync sends for a client key.
struct Item<'a> {
    policy: &'a Arc<Policy>,
    key: Key,
    admitted: u32,
    /// This node's TAT for the key, on the limiter's clock.
    tat: u64,
}

/// The answers of one sync's calls, all in time.
type Answers = Vec<Vec<i64>>;

/// Runs `calls` within the budget; `Err` is how the sync failed (`failed`
/// or `slow`, with a message for the log).
async fn within_budget<F>(link: &Link, calls: Vec<F>) -> Result<Answers, (&'static str, String)>
where
    F: std::future::Future<Output = Result<Vec<i64>, Error>>,
{
    let answered = tokio::time::timeout(link.settings.sync_timeout, futures::future::try_join_all(calls)).await;
    match answered {
        Ok(Ok(answers)) if answers.iter().any(|a| a.get(2) == Some(&1)) => {
            Err(("slow", "Redis ran the sync after the node gave up on it".into()))
        }
        Ok(Ok(answers)) => Ok(answers),
        Ok(Err(error)) if *error.kind() == fred::error::ErrorKind::Timeout => Err(("slow", error.to_string())),
        Ok(Err(error)) => Err(("failed", error.to_string())),
        Err(_) => Err(("slow", "over sync_timeout".into())),
    }
}

/// One sync: publish, take in, or go on alone.
async fn sync(link: &Link, limiter: &RateLimiter, policies: &[&Arc<Policy>], metrics: &Metrics, window: Duration) {
    let mut items = active_items(policies);
    // One instant for the whole sync: the TATs sent and the answers taken
    // in are read against the time the calls left (answers arrive later;
    // reading them against that would push every key on by a round trip).
    let sent = limiter.clock().now();
    let sent_micros = link.local_micros();
    let skipped = keep_nearest_their_limit(&mut items, link.settings.max_sync_keys, sent);
    if skipped > 0 {
        metrics.rate_limit_sync_skipped_keys.inc_by(skipped as u64);
    }
    let carry_own = link.carry_own.load(Ordering::Relaxed);
    let mut calls: Vec<_> = items
        .chunks(CHUNK)
        .map(|chunk| call(link, chunk, window, sent, carry_own))
        .collect();
    // Even with no active key, one call: the heartbeat.
    if calls.is_empty() {
        calls.push(call(link, &[], window, sent, false));
    }
    let answers = match within_budget(link, calls).await {
        Ok(answers) => answers,
        Err((result, error)) => return degrade(link, policies, metrics, result, &error),
    };
    if let Some(redis_now) = answers.first().and_then(|a| a.get(1)) {
        link.offset
            .store(redis_now.saturating_sub(sent_micros), Ordering::Relaxed);
    }
    for (chunk, answer) in items.chunks(CHUNK).zip(&answers) {
        for (item, ahead_us) in chunk.iter().zip(answer.iter().skip(HEAD)) {
            let ahead = u64::try_from(*ahead_us).unwrap_or(0).saturating_mul(1_000);
            item.policy
                .store
                .fold(item.key, sent.saturating_add(ahead), item.policy.gcra.interval);
        }
    }
    link.carry_own.store(false, Ordering::Relaxed);
    note_live(link, &answers, metrics);
    metrics.rate_limit_sync("ok", items.len());
}

/// In degraded mode: a heartbeat only (an overloaded Redis gets no key
/// work until it answers in time again), and after [`RECOVERY_PROBES`] in
/// a row, shared again. What the node admits meanwhile stays local; its
/// first full sync carries its TATs over.
async fn probe(link: &Link, policies: &[&Arc<Policy>], metrics: &Metrics, window: Duration) {
    for policy in policies {
        policy.store.take_active();
    }
    let heartbeat = call(link, &[], window, 0, false);
    match within_budget(link, vec![heartbeat]).await {
        Ok(answers) => {
            note_live(link, &answers, metrics);
            metrics.rate_limit_sync("ok", 0);
            if link.probes_ok.fetch_add(1, Ordering::Relaxed) + 1 >= RECOVERY_PROBES {
                recover(link, policies, metrics);
            }
        }
        Err((result, error)) => {
            link.probes_ok.store(0, Ordering::Relaxed);
            degrade(link, policies, metrics, result, &error);
        }
    }
}

/// The keys the shared policies saw since the last sync.
fn active_items<'a>(policies: &[&'a Arc<Policy>]) -> Vec<Item<'a>> {
    policies
        .iter()
        .flat_map(|policy| {
            policy
                .store
                .take_active()
                .into_iter()
                .map(move |(key, admitted, tat)| Item {
                    policy,
                    key,
                    admitted,
                    tat,
                })
        })
        .collect()
}

/// Records the live node count the answers give.
fn note_live(link: &Link, answers: &Answers, metrics: &Metrics) {
    let live = answers.iter().filter_map(|a| a.first().copied()).max().unwrap_or(1);
    let live = u32::try_from(live).unwrap_or(u32::MAX).max(1);
    link.live.store(live, Ordering::Relaxed);
    metrics.rate_limit_live_nodes.set(i64::from(live));
}

/// Keeps at most `max` items, those furthest ahead of `now` (nearest their
/// limit) first; returns how many were left out. A flood of distinct
/// clients cannot make a sync, and Redis's work, grow past the cap: the
/// keys left out are the lightest, which this node keeps limiting on its
/// own view until they are among the heaviest again.
fn keep_nearest_their_limit(items: &mut Vec<Item<'_>>, max: usize, now: u64) -> usize {
    if items.len() <= max {
        return 0;
    }
    let ahead = |i: &Item<'_>| std::cmp::Reverse(i.tat.saturating_sub(now));
    items.select_nth_unstable_by_key(max, ahead);
    let skipped = items.len() - max;
    items.truncate(max);
    skipped
}

/// One script call for `chunk`, whose TATs are read against `now`; with
/// `own`, it also sends the node's own TATs.
async fn call(link: &Link, chunk: &[Item<'_>], window: Duration, now: u64, own: bool) -> Result<Vec<i64>, Error> {
    let prefix = &link.settings.key_prefix;
    let mut keys = Vec::with_capacity(chunk.len() + 1);
    keys.push(link.members_key());
    let mut args = Vec::with_capacity(4 + 3 * chunk.len());
    args.push(link.node.clone());
    args.push(micros(link.settings.node_ttl).to_string());
    args.push(micros(window).to_string());
    args.push(link.deadline().to_string());
    // Written by hand, not formatted: a sync may name thousands of keys.
    let mut digits = itoa::Buffer::new();
    for item in chunk {
        let address = IpText::new(item.key.address());
        let address = std::str::from_utf8(address.as_bytes()).expect("IpText writes ASCII");
        let mut name = String::with_capacity(prefix.len() + item.policy.name.len() + 2 + address.len());
        name.push_str(prefix);
        name.push(':');
        name.push_str(&item.policy.name);
        name.push(':');
        name.push_str(address);
        keys.push(name);
        args.push(digits.format((item.policy.gcra.interval / 1_000).max(1)).to_owned());
        args.push(digits.format(item.admitted).to_owned());
        if own {
            args.push(digits.format(item.tat.saturating_sub(now) / 1_000).to_owned());
        } else {
            args.push("-1".to_owned());
        }
    }
    link.eval(SYNC, keys, args).await
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Puts the node on its own: each shared policy admits `1/N` of its rate.
fn degrade(link: &Link, policies: &[&Arc<Policy>], metrics: &Metrics, result: &'static str, error: &str) {
    metrics.rate_limit_sync(result, 0);
    let known = link.live_nodes();
    let divisor = if known == 0 { link.settings.assumed_nodes } else { known };
    for policy in policies {
        policy.set_divisor(divisor);
    }
    if !link.degraded.swap(true, Ordering::Relaxed) {
        link.carry_own.store(true, Ordering::Relaxed);
        tracing::warn!(
            %error,
            live_nodes = divisor,
            "shared rate limits: Redis out of reach, each shared policy now limited on this node to 1/{divisor} of its rate"
        );
        metrics.rate_limit_degraded.set(1);
    }
}

/// Shares again after degraded mode.
fn recover(link: &Link, policies: &[&Arc<Policy>], metrics: &Metrics) {
    for policy in policies {
        policy.set_divisor(1);
    }
    link.probes_ok.store(0, Ordering::Relaxed);
    if link.degraded.swap(false, Ordering::Relaxed) {
        tracing::info!(
            live_nodes = link.live_nodes(),
            "shared rate limits: Redis answers again, limits shared"
        );
        metrics.rate_limit_degraded.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicySettings, Rate, RateUnit};

    #[test]
    fn a_sync_over_its_cap_keeps_the_keys_nearest_their_limit() {
        let settings = PolicySettings {
            rate: Rate {
                count: 20,
                per: RateUnit::Second,
            },
            burst: 10,
            nodelay: true,
            status: 429,
            dry_run: false,
            shared: Some(true),
        };
        let policy = Arc::new(Policy::new("p", settings, 1024, true));
        let now = 1_000;
        let mut items: Vec<Item<'_>> = (0..10u64)
            .map(|i| Item {
                policy: &policy,
                key: Key(0, i),
                admitted: 1,
                // Keys 7, 8 and 9 are furthest ahead; 0 is replenished.
                tat: now + i * 100 - 100 * u64::from(i == 0),
            })
            .collect();
        assert_eq!(keep_nearest_their_limit(&mut items, 3, now), 7);
        let mut kept: Vec<u64> = items.iter().map(|i| i.key.1).collect();
        kept.sort_unstable();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(
            keep_nearest_their_limit(&mut items, 3, now),
            0,
            "under the cap: all kept"
        );
    }
}
