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
//!   state on to that (`KeyedStore::fold`). Keys expire in Redis when
//!   replenished. Redis work therefore grows with the keys active in an
//!   interval, never with requests: one call a sync (per chunk), whatever
//!   the traffic.
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
//!   unlimited. It is logged once, shown by
//!   `gateway_rate_limit_shared_degraded`, and ends by itself at the first
//!   sync that succeeds. What a failed sync carried is dropped, not resent:
//!   it was admitted under this node's own view, and counting it later
//!   would charge it twice as old debt.
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
use fred::types::config::{Config as RedisConfig, Options};
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
/// node's own TAT is (µs). Answers the live node count,
/// Redis's time (µs), then per client key how far its TAT is ahead of now
/// (µs, 0 when replenished).
///
/// A call run after its deadline (Redis stalled, the node gave up) applies
/// no counts: the node dropped them, and charging them late, all at once,
/// would refuse clients that kept to their rate.
///
/// The shared TAT is also at least any node's own: after an outage, the
/// state the nodes kept while limiting alone is carried into the shared
/// one at once, instead of the shared one starting over from empty.
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
local out = { redis.call('ZCARD', KEYS[1]), now }
local since = now - tonumber(ARGV[3])
local deadline = tonumber(ARGV[4])
local late = deadline > 0 and now > deadline
local stored = #KEYS > 1 and redis.call('MGET', unpack(KEYS, 2)) or {}
for i = 2, #KEYS do
  local count = tonumber(ARGV[3 * i])
  local own = now + tonumber(ARGV[3 * i + 1])
  local tat = tonumber(stored[i - 1]) or 0
  if not late and (count > 0 or own > tat) then
    if count > 0 then
      tat = math.max(tat, since) + tonumber(ARGV[3 * i - 1]) * count
    end
    if own > tat then tat = own end
    local keep = math.max(tat - now, 0) + ttl
    redis.call('SET', KEYS[i], tat, 'PX', math.floor(keep / 1000) + 1)
  end
  out[i + 1] = math.max(tat - now, 0)
end
return out
";

/// Answer fields before the per-key ones: live nodes, Redis's time.
const HEAD: usize = 2;

/// Removes this node from the membership set (a deliberate stop).
const LEAVE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

/// The connection to the shared store and this node's place in it; kept
/// across reloads while `[rate_limit.shared]` is unchanged.
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
    /// Redis's time minus this node's (µs), from the last answer
    /// (`i64::MIN`: not known yet).
    offset: AtomicI64,
    degraded: AtomicBool,
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
    /// that is down only means degraded mode until it is up).
    pub fn connect(settings: &SharedSettings) -> anyhow::Result<Arc<Self>> {
        let url = settings.resolve_url().map_err(anyhow::Error::msg)?;
        let mut config = RedisConfig::from_url(&url)?;
        config.fail_fast = false;
        let budget = settings.sync_timeout.max(Duration::from_millis(100));
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = budget.max(Duration::from_secs(1));
                c.internal_command_timeout = budget.max(Duration::from_secs(1));
                c.max_command_attempts = 1;
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
            live: AtomicU32::new(0),
            origin: Instant::now(),
            offset: AtomicI64::new(i64::MIN),
            degraded: AtomicBool::new(false),
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

    /// Whether the node limits on its own now.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
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
        let eval = CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false);
        let mut all = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(script.to_string());
        all.push(keys.len().to_string());
        all.extend(keys);
        all.extend(args);
        self.client.with_options(&self.options).custom(eval, all).await
    }

    /// Leaves the membership set and closes the connection (at shutdown,
    /// so the other nodes count one fewer at once rather than after
    /// `node_ttl`).
    pub async fn leave(&self) {
        let _ = self
            .eval(LEAVE, vec![self.members_key()], vec![self.node.clone()])
            .await;
        let _ = self.client.quit().await;
    }
}

/// Syncs `limiter`'s shared policies every `sync_interval` until `stop`.
pub async fn run(link: Arc<Link>, limiter: Arc<RateLimiter>, metrics: Arc<Metrics>, stop: CancellationToken) {
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
        sync(&link, &limiter, &metrics, window).await;
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

/// One sync: publish, take in, and enter or leave degraded mode.
async fn sync(link: &Link, limiter: &RateLimiter, metrics: &Metrics, window: Duration) {
    let policies: Vec<&Arc<Policy>> = limiter.shared_policies().collect();
    let items: Vec<Item<'_>> = policies
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
        .collect();
    let calls = items
        .chunks(CHUNK)
        .map(|chunk| call(link, chunk, window, limiter.clock().now()))
        .collect::<Vec<_>>();
    // Even with no active key, one call: the heartbeat.
    let calls = if calls.is_empty() {
        vec![call(link, &[], window, 0)]
    } else {
        calls
    };
    let answered = tokio::time::timeout(link.settings.sync_timeout, futures::future::try_join_all(calls)).await;
    let answers = match answered {
        Ok(Ok(answers)) => answers,
        Ok(Err(error)) if *error.kind() == fred::error::ErrorKind::Timeout => {
            return degrade(link, &policies, metrics, "slow", &error.to_string());
        }
        Ok(Err(error)) => return degrade(link, &policies, metrics, "failed", &error.to_string()),
        Err(_) => return degrade(link, &policies, metrics, "slow", "over sync_timeout"),
    };
    let now = limiter.clock().now();
    if let Some(redis_now) = answers.first().and_then(|a| a.get(1)) {
        // Off by up to the round trip, well within the budget's margin.
        link.offset
            .store(redis_now.saturating_sub(link.local_micros()), Ordering::Relaxed);
    }
    for (chunk, answer) in items.chunks(CHUNK).zip(&answers) {
        for (item, ahead_us) in chunk.iter().zip(answer.iter().skip(HEAD)) {
            let ahead = u64::try_from(*ahead_us).unwrap_or(0).saturating_mul(1_000);
            item.policy
                .store
                .fold(item.key, now.saturating_add(ahead), item.policy.gcra.interval);
        }
    }
    let live = answers.iter().filter_map(|a| a.first().copied()).max().unwrap_or(1);
    let live = u32::try_from(live).unwrap_or(u32::MAX).max(1);
    link.live.store(live, Ordering::Relaxed);
    metrics.rate_limit_live_nodes.set(i64::from(live));
    metrics.rate_limit_sync("ok", items.len());
    for policy in &policies {
        policy.set_divisor(1);
    }
    if link.degraded.swap(false, Ordering::Relaxed) {
        tracing::info!(
            live_nodes = live,
            "shared rate limits: Redis answers again, limits shared"
        );
        metrics.rate_limit_degraded.set(0);
    }
}

/// One script call for `chunk`, whose TATs are read against `now`.
async fn call(link: &Link, chunk: &[Item<'_>], window: Duration, now: u64) -> Result<Vec<i64>, Error> {
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
        let mut name = String::with_capacity(prefix.len() + item.policy.name.len() + 2 + address.as_bytes().len());
        name.push_str(prefix);
        name.push(':');
        name.push_str(&item.policy.name);
        name.push(':');
        name.push_str(std::str::from_utf8(address.as_bytes()).unwrap_or_default());
        keys.push(name);
        args.push(digits.format((item.policy.gcra.interval / 1_000).max(1)).to_owned());
        args.push(digits.format(item.admitted).to_owned());
        args.push(digits.format(item.tat.saturating_sub(now) / 1_000).to_owned());
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
        tracing::warn!(
            %error,
            live_nodes = divisor,
            "shared rate limits: Redis out of reach, each shared policy now limited on this node to 1/{divisor} of its rate"
        );
        metrics.rate_limit_degraded.set(1);
    }
}
