//! One limit across three gateway processes sharing a real `redis-server`
//! (`[rate_limit.shared]`): accuracy against one node's, no false refusals
//! for clients under the rate, Redis killed and back, a node restarted.
//!
//! Clients are told apart by `X-Forwarded-For` (the gateways trust
//! 127.0.0.1 as a proxy), so hundreds of clients share a few connections.
//! The scenarios run one at a time: each measures rates against the clock
//! on a two-core machine.

mod common;

#[allow(dead_code)]
#[path = "../../app/tests/common/redis.rs"]
mod redis;

// `redis` reaches `ports` as `super::ports`, as in the app's tests.
use common::logged::LoggedGateway;
use common::metric;
use common::ports;
use common::upstream::{Replica, replicas};
use redis::OwnRedis;
use std::time::Duration;
use tokio::time::Instant;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Gateway nodes in front of two replicas, sharing limits.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<LoggedGateway>>,
    replicas: Vec<Replica>,
    redis_url: String,
}

fn shared_config(redis_url: &str) -> String {
    format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]

[rate_limits.per_ip]
rate = "20r/s"
burst = 10
nodelay = true

[rate_limit.shared]
redis_url = "{redis_url}"
key_prefix = "test"
sync_interval = "100ms"
assumed_nodes = 2
"#
    )
}

impl Cluster {
    async fn start(redis: &OwnRedis, n: usize) -> Self {
        Self::start_on(redis.url(), n).await
    }

    /// `n` nodes sharing through the Redis at `redis_url`.
    async fn start_on(redis_url: String, n: usize) -> Self {
        // Two replicas: a replica's own hiccup under 4,500 r/s (seen once in CI as
        // a 502) is retried on the other, as in production, not charged to
        // the limiter under test.
        let replicas = replicas(2).await;
        let mut cluster = Self {
            dirs: Vec::new(),
            nodes: Vec::new(),
            replicas,
            redis_url,
        };
        for _ in 0..n {
            let dir = tempfile::tempdir().expect("dir");
            let node = LoggedGateway::start(dir.path(), &cluster.replicas, &shared_config(&cluster.redis_url)).await;
            cluster.dirs.push(dir);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// Stops node `i` (SIGTERM: it leaves the membership set).
    fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.stop();
        }
    }

    /// Starts node `i` again, as a new process with empty local state.
    async fn start_node(&mut self, i: usize) {
        let node = LoggedGateway::start(self.dirs[i].path(), &self.replicas, &shared_config(&self.redis_url)).await;
        self.nodes[i] = Some(node);
    }

    /// The URLs of `path` on the nodes up now.
    fn urls(&self, path: &str) -> Vec<String> {
        self.nodes.iter().flatten().map(|n| n.url(path)).collect()
    }

    async fn metric(&self, i: usize, name: &str) -> f64 {
        let node = self.nodes[i].as_ref().expect("node up");
        let text = reqwest::get(node.admin_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        metric(&text, name)
    }

    /// Waits until every node up counts `n` live nodes.
    async fn wait_live(&self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = true;
            for i in (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()) {
                all &= self.metric(i, "gateway_rate_limit_live_nodes").await == n;
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "the nodes never counted {n} live");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One scenario's world: the serial turn, its own Redis, `n` nodes counting
/// each other live, and a client.
struct World {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    redis: OwnRedis,
    cluster: Cluster,
    http: reqwest::Client,
}

impl World {
    async fn up(n: usize) -> Self {
        let serial = SERIAL.lock().await;
        let redis = OwnRedis::start();
        let cluster = Cluster::start(&redis, n).await;
        cluster.wait_live(n as f64).await;
        Self {
            _serial: serial,
            redis,
            cluster,
            http: reqwest::Client::new(),
        }
    }
}

/// One request's result: when it was sent (since the start), which node,
/// and the status (0 for a connection error).
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Duration,
    node: usize,
    status: u16,
}

/// Sends `count` requests from `client`, one every `every`, round robin
/// over the nodes `urls()` gives at each send; the requests run
/// concurrently, so a slow answer does not slow the pace.
async fn drive(
    http: &reqwest::Client,
    urls: impl Fn() -> Vec<String>,
    client: &str,
    count: usize,
    every: Duration,
    start: Instant,
) -> Vec<Sent> {
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        tick.tick().await;
        let urls = urls();
        let node = i % urls.len();
        let request = http.get(&urls[node]).header("x-forwarded-for", client).send();
        let at = start.elapsed();
        pending.push(tokio::spawn(async move {
            let status = match request.await {
                Ok(r) => r.status().as_u16(),
                Err(e) => {
                    eprintln!("request to node {node} failed: {e:?}");
                    0
                }
            };
            Sent { at, node, status }
        }));
    }
    let mut out = Vec::with_capacity(count);
    for p in pending {
        out.push(p.await.expect("request task"));
    }
    out
}

/// `count` requests from `client` at 100 r/s over `urls`, in the
/// background, from `start`.
fn at_100_per_second(
    http: &reqwest::Client,
    urls: Vec<String>,
    client: &'static str,
    count: usize,
    start: Instant,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    let http = http.clone();
    tokio::spawn(async move {
        let every = Duration::from_millis(10);
        drive(&http, move || urls.clone(), client, count, every, start).await
    })
}

fn accepted(sent: &[Sent], from: Duration, to: Duration) -> usize {
    sent.iter()
        .filter(|s| s.at >= from && s.at < to && s.status == 200)
        .count()
}

fn assert_no_errors(sent: &[Sent]) {
    let bad: Vec<&Sent> = sent.iter().filter(|s| s.status != 200 && s.status != 429).collect();
    assert!(bad.is_empty(), "answers other than 200 and 429: {bad:?}");
}

fn eval_calls(redis: &OwnRedis) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]);
    stats
        .lines()
        .find(|l| l.starts_with("cmdstat_eval:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_spread_over_three_nodes_gets_what_one_node_would_give() {
    let World {
        _serial,
        redis,
        cluster,
        http,
    } = World::up(3).await;
    let evals_before = eval_calls(&redis);
    let start = Instant::now() + Duration::from_millis(50);
    let sent = drive(
        &http,
        || cluster.urls("/a"),
        "203.0.113.7",
        500,
        Duration::from_millis(10),
        start,
    )
    .await;
    assert_no_errors(&sent);
    let ok = accepted(&sent, Duration::ZERO, Duration::MAX);
    // bench/shared_limits.sh reads this line.
    eprintln!("shared accuracy: {ok} of 500 accepted (one node: 110)");
    // One node gives exactly 110 (rate_limit.rs); unshared, three give ~330.
    assert!((99..=121).contains(&ok), "{ok} accepted, not 110 ± 10%");
    for node in 0..3 {
        let mine = sent.iter().filter(|s| s.node == node && s.status == 200).count();
        assert!(mine > 10, "node {node} admitted only {mine}: the load was not spread");
    }
    // Redis work follows syncs (3 nodes × ~10 a second), not requests.
    let evals = eval_calls(&redis) - evals_before;
    assert!(evals < 250, "{evals} script calls for 500 requests over 5 s");
    assert!(cluster.metric(0, "gateway_rate_limit_syncs_total{result=\"ok\"}").await > 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_clients_under_the_rate_are_never_limited() {
    let World {
        _serial,
        redis: _redis,
        cluster,
        http: _,
    } = World::up(3).await;
    // One HTTP/2 connection per node (the plain listener takes prior
    // knowledge): 4,500 r/s over HTTP/1.1 would need more connections than
    // the gateway allows one address.
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let start = Instant::now() + Duration::from_millis(100);
    let urls = cluster.urls("/b");
    let mut clients = Vec::new();
    for c in 0..300usize {
        let http = http.clone();
        let urls = urls.clone();
        let ip = format!("198.51.{}.{}", c / 200, c % 200 + 1);
        // Spread the clients' phases over one period.
        let phase = Duration::from_micros(66_666 * c as u64 / 300);
        // Each client starts on a different node.
        clients.push(tokio::spawn(async move {
            let rotate = move || {
                let mut u = urls.clone();
                u.rotate_left(c % 3);
                u
            };
            drive(&http, rotate, &ip, 45, Duration::from_micros(66_667), start + phase).await
        }));
    }
    let mut limited = 0;
    let mut total = 0;
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.expect("client"));
    }
    for sent in all {
        assert_no_errors(&sent);
        total += sent.len();
        limited += sent.iter().filter(|s| s.status == 429).count();
    }
    assert_eq!(total, 300 * 45);
    assert_eq!(limited, 0, "{limited} of {total} requests under the rate were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_each_node_keeps_a_third_and_sharing_comes_back() {
    let World {
        _serial,
        mut redis,
        cluster,
        http,
    } = World::up(3).await;
    let start = Instant::now() + Duration::from_millis(50);
    let client = at_100_per_second(&http, cluster.urls("/c"), "203.0.113.9", 900, start);
    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    redis.kill();
    tokio::time::sleep_until(start + Duration::from_secs(5)).await;
    for i in 0..3 {
        assert_eq!(
            cluster.metric(i, "gateway_rate_limit_shared_degraded").await,
            1.0,
            "node {i}"
        );
    }
    redis.restart();
    let sent = client.await.expect("client");
    assert_no_errors(&sent);
    let secs = Duration::from_secs;
    // Alone, each node admits a third of the rate: the client, spread over
    // three nodes, keeps about 20 r/s (unlimited would be 100, each node
    // at the full quota 60).
    let alone = accepted(&sent, secs(3), secs(5));
    assert!((30..=55).contains(&alone), "{alone} admitted in 2 s without Redis");
    for node in 0..3 {
        let mine = sent
            .iter()
            .filter(|s| s.node == node && s.status == 200 && s.at >= secs(3) && s.at < secs(5))
            .count();
        assert!(
            (8..=20).contains(&mine),
            "node {node} admitted {mine} in 2 s alone, not ~13"
        );
    }
    // Shared again (fred reconnects within a second of the restart).
    let back = accepted(&sent, secs(7), secs(9));
    assert!(
        (34..=48).contains(&back),
        "{back} admitted in 2 s after Redis came back"
    );
    for i in 0..3 {
        assert_eq!(
            cluster.metric(i, "gateway_rate_limit_shared_degraded").await,
            0.0,
            "node {i}"
        );
        let log = std::fs::read_to_string(cluster.dirs[i].path().join("access.log")).expect("log");
        let shared_lines: Vec<&str> = log.lines().filter(|l| l.contains("shared rate limits")).collect();
        assert_eq!(
            log.matches("Redis out of reach").count(),
            1,
            "node {i} logs the outage once: {shared_lines:#?}"
        );
        assert_eq!(
            log.matches("Redis answers again").count(),
            1,
            "node {i} logs the recovery once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_hand_out_a_fresh_burst() {
    let World {
        _serial,
        redis: _redis,
        mut cluster,
        http,
    } = World::up(3).await;
    let start = Instant::now() + Duration::from_millis(50);
    let urls = std::sync::Arc::new(std::sync::Mutex::new(cluster.urls("/d")));
    let client = {
        let http = http.clone();
        let urls = urls.clone();
        tokio::spawn(async move {
            let now = move || urls.lock().expect("urls").clone();
            drive(&http, now, "203.0.113.11", 700, Duration::from_millis(10), start).await
        })
    };
    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    *urls.lock().expect("urls") = vec![
        cluster.nodes[0].as_ref().expect("up").url("/d"),
        cluster.nodes[1].as_ref().expect("up").url("/d"),
    ];
    cluster.stop(2);
    // SIGTERM left the membership: the others count two at once, not
    // after node_ttl (2 s).
    let left = Instant::now();
    while cluster.metric(0, "gateway_rate_limit_live_nodes").await != 2.0 {
        assert!(
            left.elapsed() < Duration::from_secs(1),
            "the stopped node is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start_node(2).await;
    let restarted = start.elapsed();
    *urls.lock().expect("urls") = cluster.urls("/d");
    let sent = client.await.expect("client");
    assert_no_errors(&sent);
    let after = accepted(&sent, restarted, restarted + Duration::from_secs(1));
    // 20 in a second at the rate; a fresh burst on the new node would add 11.
    assert!(after <= 26, "{after} admitted in the second after the restart");
    let total = accepted(&sent, Duration::ZERO, Duration::MAX);
    assert!((135..=165).contains(&total), "{total} admitted in 7 s, not 150 ± 10%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_budget_degrades_the_node_until_it_answers_in_time() {
    let World {
        _serial,
        redis,
        cluster,
        http,
    } = World::up(2).await;
    let start = Instant::now() + Duration::from_millis(50);
    let client = at_100_per_second(&http, cluster.urls("/e"), "203.0.113.13", 300, start);
    tokio::time::sleep_until(start + Duration::from_millis(500)).await;
    // Redis holds every client for 1.5 s: syncs run past sync_timeout.
    assert!(redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]).starts_with("+OK"));
    tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
    for i in 0..2 {
        assert_eq!(
            cluster.metric(i, "gateway_rate_limit_shared_degraded").await,
            1.0,
            "node {i}"
        );
        assert!(
            cluster
                .metric(i, "gateway_rate_limit_syncs_total{result=\"slow\"}")
                .await
                >= 1.0
        );
    }
    let sent = client.await.expect("client");
    assert_no_errors(&sent);
    for i in 0..2 {
        assert_eq!(
            cluster.metric(i, "gateway_rate_limit_shared_degraded").await,
            0.0,
            "node {i}"
        );
    }
    // 3 s at 20 r/s plus the burst, degraded for a second and a half of it.
    let ok = accepted(&sent, Duration::ZERO, Duration::MAX);
    let timeline: Vec<(usize, usize)> = (0..12)
        .map(|q| {
            let from = Duration::from_millis(250 * q);
            let to = from + Duration::from_millis(250);
            let on = |n: usize| {
                sent.iter()
                    .filter(|s| s.node == n && s.status == 200 && s.at >= from && s.at < to)
                    .count()
            };
            (on(0), on(1))
        })
        .collect();
    // One node: 71. Each node alone at half the rate keeps the total near
    // it; what the nodes admitted alone is carried into the shared state
    // when Redis answers again (no second burst), and what was sent while
    // Redis stalled is not charged twice (no refusals after).
    assert!((60..=82).contains(&ok), "{ok} admitted in 3 s: {timeline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_quota_applies_to_the_shared_state_on_every_node_after_reload() {
    let World {
        _serial,
        redis: _redis,
        cluster,
        http,
    } = World::up(3).await;
    let start = Instant::now() + Duration::from_millis(50);
    let client = at_100_per_second(&http, cluster.urls("/f"), "203.0.113.15", 500, start);
    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    // Every node's file now says 2 r/s, no burst (watched files reload).
    for (node, dir) in cluster.nodes.iter().flatten().zip(&cluster.dirs) {
        let slower = node
            .config
            .replace("rate = \"20r/s\"\nburst = 10", "rate = \"2r/s\"\nburst = 0");
        assert_ne!(slower, node.config);
        std::fs::write(dir.path().join("live.toml"), slower).expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0..3 {
        while cluster
            .metric(i, "gateway_config_reloads_total{result=\"applied\"}")
            .await
            < 1.0
        {
            assert!(Instant::now() < deadline, "node {i} did not reload");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let reloaded = start.elapsed();
    // A reload keeps the node's identity and connection: still three live
    // (new identities would count six until the old ones expired).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        assert_eq!(
            cluster.metric(i, "gateway_rate_limit_live_nodes").await,
            3.0,
            "node {i}"
        );
    }
    let sent = client.await.expect("client");
    assert_no_errors(&sent);
    let before = accepted(&sent, Duration::ZERO, Duration::from_secs(2));
    // 51 on one node; between syncs the cluster can run ahead by about
    // what the other nodes admit in one interval (README).
    assert!(
        (45..=62).contains(&before),
        "{before} admitted in 2 s at 20 r/s burst 10"
    );
    // From the reload on, 2 r/s over the cluster: no fresh burst from the
    // changed policy's empty local state, and not 3 × 2 r/s.
    let after = accepted(&sent, reloaded + Duration::from_millis(500), Duration::from_secs(5));
    let span = Duration::from_secs(5)
        .saturating_sub(reloaded + Duration::from_millis(500))
        .as_secs_f64();
    let most = (2.0 * span).ceil() as usize + 2;
    assert!(after <= most, "{after} admitted in {span:.1} s at 2 r/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_assumes_the_configured_nodes_until_it_is_up() {
    let _serial = SERIAL.lock().await;
    let mut redis = OwnRedis::start();
    redis.kill();
    let cluster = Cluster::start(&redis, 1).await;
    let http = reqwest::Client::new();
    let start = Instant::now() + Duration::from_millis(50);
    let sent = drive(
        &http,
        || cluster.urls("/g"),
        "203.0.113.17",
        200,
        Duration::from_millis(10),
        start,
    )
    .await;
    assert_no_errors(&sent);
    assert_eq!(cluster.metric(0, "gateway_rate_limit_shared_degraded").await, 1.0);
    // assumed_nodes = 2: 10 r/s with the same 500 ms tolerance (6 at
    // once), not the 51 a node sharing alone would admit in 2 s.
    let ok = accepted(&sent, Duration::ZERO, Duration::MAX);
    assert!((20..=32).contains(&ok), "{ok} admitted in 2 s at half the rate");
    redis.restart();
    cluster.wait_live(1.0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.metric(0, "gateway_rate_limit_shared_degraded").await != 0.0 {
        assert!(Instant::now() < deadline, "the node never shared again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay to `to` that holds every chunk `delay` each way: Redis as
/// far away as another data centre. Returns its `redis://` URL.
async fn delayed_relay(to: u16, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, delay));
            tokio::spawn(pump(sr, cw, delay));
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// Copies `from` to `to`, each chunk sent `delay` after it was read (in
/// order: a reader task stamps chunks, a writer waits for each stamp).
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    });
    while let Some((at, bytes)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distant_redis_does_not_make_clients_under_the_rate_limited() {
    let _serial = SERIAL.lock().await;
    let redis = OwnRedis::start();
    // 40 ms round trips: well inside the 250 ms budget, so shared.
    let url = delayed_relay(redis.port, Duration::from_millis(20)).await;
    let cluster = Cluster::start_on(url, 3).await;
    cluster.wait_live(3.0).await;
    let http = reqwest::Client::new();
    let start = Instant::now() + Duration::from_millis(50);
    // 18 r/s against 20 r/s, spread over the nodes, for 6 s.
    let sent = drive(
        &http,
        || cluster.urls("/h"),
        "203.0.113.19",
        108,
        Duration::from_micros(55_556),
        start,
    )
    .await;
    assert_no_errors(&sent);
    let refused = sent.iter().filter(|s| s.status == 429).count();
    assert_eq!(refused, 0, "{refused} of 108 requests under the rate refused");
    for i in 0..3 {
        assert_eq!(
            cluster.metric(i, "gateway_rate_limit_shared_degraded").await,
            0.0,
            "node {i}"
        );
    }
    // And the limit still holds at that distance: 100 r/s for 3 s.
    let sent = drive(
        &http,
        || cluster.urls("/h"),
        "203.0.113.21",
        300,
        Duration::from_millis(10),
        Instant::now(),
    )
    .await;
    let ok = accepted(&sent, Duration::ZERO, Duration::MAX);
    assert!(
        (63..=80).contains(&ok),
        "{ok} of 300 admitted in 3 s at 20 r/s burst 10 (one node: 71)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_one_limit_per_64_across_the_nodes() {
    let World {
        _serial,
        redis,
        cluster,
        http,
    } = World::up(3).await;
    let start = Instant::now() + Duration::from_millis(50);
    // Two addresses of one /64, each at 50 r/s, spread over the nodes.
    let a = at_100_per_second(&http, cluster.urls("/i"), "2001:db8:1:2::7", 150, start);
    let b = at_100_per_second(
        &http,
        cluster.urls("/i"),
        "2001:db8:1:2:ffff::8",
        150,
        start + Duration::from_millis(5),
    );
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert_no_errors(&a);
    assert_no_errors(&b);
    let ok = accepted(&a, Duration::ZERO, Duration::MAX) + accepted(&b, Duration::ZERO, Duration::MAX);
    // One key: 1.5 s at 20 r/s plus the burst is 41 (two keys: about 82).
    assert!((36..=50).contains(&ok), "{ok} admitted for one /64 in 1.5 s");
    let stored = redis.command(&["EXISTS", "test:per_ip:2001:db8:1:2::"]);
    assert!(stored.starts_with(":1"), "the /64's key is not in Redis: {stored}");
}
